"""Reading results, no model loaded: tables (analysis), paired effects and verdicts (effects), the reports of the
probes and of drift (binding_report, transfer_report, drift_report), figures (figure_style, plots, training_plots,
bank_plots) and the reference results kept in git (reference, reference_render, reference_compare, reference_tables)."""
