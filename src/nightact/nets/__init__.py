"""The networks: the six models, the pretrained frame encoders and the recurrent cells explained."""
