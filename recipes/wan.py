"""wan: Wan 2.1 / 2.2 text to video, each round split across the devices of `fabric run`;
writes `<id>.mp4` (the settings in its metadata) and `<id>.png`, the contact sheet of its frames.

fabric run --accelerator cuda --devices 4 --strategy ddp recipes/wan.py --prompt "a cat surfing"
python recipes/wan.py --tiny --prompt "a cat surfing" --frames 9

Wan 2.2 (two experts): `--model Wan-AI/Wan2.2-T2V-A14B-Diffusers --guidance 4 --guidance-scale-2 3`;
480p: `--height 480 --width 832` (the default), 720p: `--height 720 --width 1280`.
"""

from driffusion.recipes.text2image import run_recipe

if __name__ == "__main__":
    run_recipe("wan")
