"""What a trained model does: the samplers (L2T unmasking, T2L DDIM), validation metrics, decoded examples,
the evaluation suite (text_metrics, suite) and semantic similarity (sts)."""
