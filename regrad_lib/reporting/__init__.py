"""Reading results, no model loaded: tables (analysis), paired effects and verdicts (effects), the reports of the
probes, of drift and of the storage schemes (binding_report, transfer_report, drift_report, frontier_report), figures
(figure_style: house style and saving; plots, training_plots, bank_plots) and the reference results kept in git
(reference, reference_render, reference_compare, reference_tables)."""
