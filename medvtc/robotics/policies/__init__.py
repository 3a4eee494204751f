"""Robot policies in LeRobot's layout (`compressor_vla`)."""
