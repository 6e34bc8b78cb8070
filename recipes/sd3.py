"""sd3: text to image with DRiffusion / SRDS on a diffusers pipeline.

    fabric run --accelerator cuda --devices 4 --strategy ddp recipes/sd3.py --prompt "a lighthouse"
    python recipes/sd3.py --tiny --prompt "a red cat"          # random tiny model, CPU, offline

Every flag: ``python sd3.py --help`` (the job is ``driffusion.recipes.text2image``, so this
script runs from any folder, copied alone).
"""

from driffusion.recipes.text2image import run_recipe

if __name__ == "__main__":
    run_recipe("sd3")
