"""A HoVerNet on smp encoders for 128-px patches: targets, losses, post-processing, metrics, trainer."""
