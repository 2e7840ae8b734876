"""Text-to-video: sampling, DDIM inversion, MotionDirector dual-path LoRA training and inference."""
