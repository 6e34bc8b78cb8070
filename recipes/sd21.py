"""sd21: text to image with DRiffusion / SRDS on a diffusers pipeline.

    fabric run --accelerator cuda --devices 4 --strategy ddp recipes/sd21.py --prompt "a lighthouse"
    python recipes/sd21.py --tiny --prompt "a red cat"          # random tiny model, CPU, offline

See text2image.py (beside this script) for every flag.
"""

from text2image import run_recipe

if __name__ == "__main__":
    run_recipe("sd21")
