"""Making the weights: dataset readers and patient-wise splits, training of the classifier, the
detector and the plausibility gate, and their evaluation (AUROC with bootstrap CIs, mAP)."""
