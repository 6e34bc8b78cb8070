"""sdxl: SDXL text to image, each round split across the devices of `fabric run`.

fabric run --accelerator cuda --devices 4 --strategy ddp recipes/sdxl.py --prompt "a lighthouse"
"""

from driffusion.recipes.text2image import run_recipe

if __name__ == "__main__":
    run_recipe("sdxl")
