"""sd3: SD3 (rectified flow) text to image; `--no-t5` drops its T5 encoder.

python recipes/sd3.py --tiny --prompt "a red cat"      # random tiny model, CPU, offline
"""

from driffusion.recipes.text2image import run_recipe

if __name__ == "__main__":
    run_recipe("sd3")
