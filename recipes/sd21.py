"""sd21: Stable Diffusion 2.1 text to image with a driffusion sampler (`--help` for every flag).

python recipes/sd21.py --tiny --prompt "a red cat"    # random tiny model, CPU, offline
"""

from driffusion.recipes.text2image import run_recipe

if __name__ == "__main__":
    run_recipe("sd21")
