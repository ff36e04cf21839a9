"""Face stage: landmarks → three anchors → similarity warp to the aligned crop; mouth mask; paste-back."""
