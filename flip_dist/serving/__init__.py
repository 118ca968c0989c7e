"""Serving a FLIP_ID model without the PLM: FLIP_ID predicts with the ID model alone, "without
altering the ID-based model structure or increasing the inference cost" (paper Sec. V-C).

- export_id.export_id: a finetune.mode=flip_id export -> one TorchScript file (feature ids -> logits);
- score.score: Parquet rows -> probabilities, AUC / logloss, with torch, pyarrow and sklearn only;
- commands.add_commands: `flip-dist export-id` and `flip-dist score`.
Nothing is imported here: the functions share their modules' names, and scoring must not pull in
the training stack that exporting needs."""
