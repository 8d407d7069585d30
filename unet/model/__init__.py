"""The network: U-Net builders from the model config, losses and metrics (pure Keras 3,
backend-agnostic)."""
