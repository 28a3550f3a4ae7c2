"""Hub mode: one coordinator owns the study, workers run the objective through a proxy trial."""
