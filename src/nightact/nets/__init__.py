"""The networks: the original's six models, the pretrained frame encoders and the cells explained."""
