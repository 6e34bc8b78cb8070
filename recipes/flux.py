"""flux: FLUX.1 text to image (guidance-distilled: drafts are the parallel axis), each round
split across the devices of `fabric run`.

fabric run --accelerator cuda --devices 4 --strategy ddp recipes/flux.py --prompt "a lighthouse"
python recipes/flux.py --tiny --prompt "a lighthouse" --sampler 'aggressive(drafts=2)'

FLUX.1-schnell: `--model black-forest-labs/FLUX.1-schnell --steps 4 --guidance 0`. True
classifier-free guidance: `--negative-prompt "..." --true-cfg-scale 4` (two branches a state).
"""

from driffusion.recipes.text2image import run_recipe

if __name__ == "__main__":
    run_recipe("flux")
