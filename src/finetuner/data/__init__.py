"""Image folders: scanning and verifying, the split, decoding, resizing and augmentation."""
