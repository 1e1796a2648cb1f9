"""Training: the loss (:mod:`.losses`), checkpoints (:mod:`.checkpoint`), pretrained transforms
(:mod:`.pretrained`), the run folder (:mod:`.run_folder`), CPU threads (:mod:`.threads`) and the Aim
logger (:mod:`.aim_logger`, with the Aim compatibility code apart in :mod:`.aim_compat`)."""
