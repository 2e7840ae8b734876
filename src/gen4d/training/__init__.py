"""Training: the one stage loop of every recipe and trainable, optimisers and learning-rate schedules, losses."""
