"""The jobs behind the scripts in ``recipes/``, in the package so that a recipe copied alone
into any folder runs with only the package installed: the text-to-image job that ``sd21.py``,
``sdxl.py`` and ``sd3.py`` call ([`run_recipe`][driffusion.recipes.text2image.run_recipe])."""
