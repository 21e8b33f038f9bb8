"""Training data: aligned talking-face clips for the U-Net and SyncNet, and the dataset producer."""
