"""Running the notebooks: papermill (pipeline), heavy steps as jobs of several processes (launch) and the notebooks'
set-up helpers (notebook)."""
