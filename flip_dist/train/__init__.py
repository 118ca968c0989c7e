"""Training: the stages (pretrain, finetune, evaluate) and their step, shared by every runtime;
the single-process loop over a stage."""
