"""The page `dvc plots show` and `dvc plots diff` fill: Vega, Vega-Lite and Vega-Embed inline.

DVC's own page loads those three scripts from a CDN, so offline it stays blank. This one carries
the bundle that vl-convert-python ships (the versions are named in the page), so the plots draw
with no network. .dvc/config names it (`plots.html_template`); it is generated, not committed,
because it is 0.9 MB of third-party JavaScript that the pinned package already holds.
"""

from __future__ import annotations

from pathlib import Path

from pipeline.core import files
from pipeline.report.figures import VEGA_LITE

DEFAULT = Path(".dvc") / "offline_plots.html"

# DVC replaces {refresh_tag} and {plot_divs}. There is no {scripts}: that is where DVC would put
# its CDN <script> tags. Each plot div calls the global vegaEmbed(el, spec); the wrapper makes it
# draw SVG, so every mark is an element of the page (sharp at any zoom, visible in the DOM).
PAGE = """<!DOCTYPE html>
<html>
<head>
    {refresh_tag}
    <meta charset="utf-8">
    <title>DVC Plot</title>
    <!-- Vega __VEGA__, Vega-Lite __VEGA_LITE__, Vega-Embed __VEGA_EMBED__: vl-convert-python __VL_CONVERT__ -->
    <script type="text/javascript">
(() => {
__BUNDLE__
})();
window.vegaEmbed = ((embed) => (el, spec, opt) => embed(el, spec, Object.assign({renderer: "svg"}, opt)))(
    window.vegaEmbed
);
    </script>
    <style>
        body { font-family: sans-serif; }
        table { border-spacing: 15px; }
    </style>
</head>
<body>
    {plot_divs}
</body>
</html>
"""


def render() -> str:
    """The page, with the JavaScript bundle of the installed vl-convert-python."""
    from importlib.metadata import version

    import vl_convert

    # Wrapped in a function above, so the bundle's top-level names (`spec`, say) cannot collide
    # with the `var spec` of DVC's plot divs; it publishes vega, vegaLite and vegaEmbed on window.
    # vl-convert's stub marks `snippet` as required; at run time it defaults to the one we want.
    bundle = vl_convert.javascript_bundle(vl_version=VEGA_LITE)  # type: ignore[call-arg]
    for marker in ("</script", "{plot_divs}", "{refresh_tag}", "{scripts}"):
        # Either would break the page: the first ends the inline script, the others DVC replaces.
        if marker in bundle:
            raise RuntimeError(f"vl-convert's JavaScript bundle contains {marker!r}; cannot inline it")
    page = PAGE
    for key, value in {
        "__VEGA__": vl_convert.get_vega_version(),
        "__VEGA_LITE__": VEGA_LITE,
        "__VEGA_EMBED__": vl_convert.get_vega_embed_version(),
        "__VL_CONVERT__": version("vl-convert-python"),
    }.items():
        page = page.replace(key, value)
    return page.replace("__BUNDLE__", bundle)


def run(output: Path = DEFAULT) -> None:
    files.write_text(output, render())
    print(f"plots-template: wrote {output}; `dvc plots show` and `dvc plots diff` now draw offline")
