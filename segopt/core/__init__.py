"""Plain-PyTorch parts that are neither a model, a loss nor data: learning-rate schedules,
inference (sliding window, flips), precision and compile choices, checkpoint resolution and
colour palettes. Nothing here imports Lightning's training machinery."""
