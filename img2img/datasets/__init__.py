"""Data sets: the synthesised demo sets (no download) and the public CycleGAN/pix2pix archives."""
