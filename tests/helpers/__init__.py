"""What several test modules share: configs, models, data and runs (tests never import other tests)."""
