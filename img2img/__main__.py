"""``python -m img2img`` (and ``torchrun -m img2img``) run the command line."""
from img2img.cli import main

if __name__ == "__main__":
    main()
