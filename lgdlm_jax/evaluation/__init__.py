"""What a trained model does: the samplers (L2T unmasking, T2L DDIM), validation metrics, decoded examples."""
