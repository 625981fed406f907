"""The labeling interface: one binary question per figure, with hotkeys and an "unsure" way out.

The question the labels answer (and the classifier learns) is the CVF positive class: a
grid-like figure holding at least one natural image. The task data fields named here
(`image`, `caption` and `subcaption` shown under it, `paper_id`, `img_name`, `source_path`) are what
`labeling.push` uploads. (A project created before the caption was shown keeps its interface.)
"""
from __future__ import annotations

# Names that tie the XML, the predictions we upload and the annotations we read back together.
FROM_NAME = "label"   # the <Choices> control
TO_NAME = "figure"    # the <Image> object

# Choice value in Label Studio -> (label in the labels table, choice in the labels table).
CHOICES = {
    "Grid with a photo": (1, "positive"),
    "Not a photo grid": (0, "negative"),
    "Unsure": (None, "unsure"),
}
CHOICE_OF_LABEL = {1: "Grid with a photo", 0: "Not a photo grid"}

INSTRUCTION = """
<p><b>Question:</b> is this figure <b>grid-like</b> and does it hold <b>at least one natural
image</b> (a photo or a video frame)?</p>
<p><b>Positive</b> (key 1): image grids of photos; qualitative result grids (input / output /
ground truth side by side); segmentation masks, depth maps, edges or heat maps shown beside
their photos; a photo with its annotation next to it.</p>
<p><b>Negative</b> (key 2): plots and charts, architecture and flow diagrams, tables, single
icons or logos, pure text or equations, grids of synthetic renderings or drawings with no photo.</p>
<p><b>Unsure</b> (key 3): you cannot tell, e.g. the image is too small or the photo could be a
rendering. Unsure answers are kept as such and not used as labels.</p>
"""

LABEL_CONFIG = f"""
<View>
  <View style="display: flex; gap: 1em; align-items: flex-start">
    <View style="flex: 4">
      <Image name="{TO_NAME}" value="$image" maxWidth="100%" zoom="true" zoomControl="true"/>
      <Text name="caption" value="$caption"/>
      <Text name="subcaption" value="$subcaption"/>
    </View>
    <View style="flex: 1; min-width: 16em">
      <Header value="Grid-like figure with a natural image?" size="4"/>
      <Choices name="{FROM_NAME}" toName="{TO_NAME}" choice="single-radio" required="true"
               showInline="false">
        <Choice value="Grid with a photo" hotkey="1"
                hint="photo grids, qualitative results, masks or depth beside their photos"/>
        <Choice value="Not a photo grid" hotkey="2"
                hint="plots, charts, diagrams, tables, icons, text"/>
        <Choice value="Unsure" hotkey="3" hint="cannot tell"/>
      </Choices>
      <Header value="Paper" size="6"/>
      <Text name="paper_id" value="$paper_id"/>
      <Header value="Figure file" size="6"/>
      <Text name="img_name" value="$img_name"/>
      <Header value="Source path" size="6"/>
      <Text name="source_path" value="$source_path"/>
    </View>
  </View>
</View>
""".strip()


def choice_result(choice: str, origin: str | None = None) -> list[dict]:
    """The `result` of an annotation or prediction that picks `choice` (a key of CHOICES).

    `origin` marks answers no person gave (the demo's "replay-truth"); Label Studio keeps it.
    """
    if choice not in CHOICES:
        raise ValueError(f"unknown choice {choice!r}; expected one of {list(CHOICES)}")
    item = {"from_name": FROM_NAME, "to_name": TO_NAME, "type": "choices",
            "value": {"choices": [choice]}}
    if origin:
        item["origin"] = origin
    return [item]


def origin_of(result: list[dict]) -> str | None:
    return next((item.get("origin") for item in result or [] if item.get("from_name") == FROM_NAME),
                None)


def choice_of(result: list[dict]) -> str | None:
    """The choice an annotation's `result` holds, or None when it holds none of ours."""
    for item in result or []:
        if item.get("from_name") == FROM_NAME and item.get("type") == "choices":
            picked = item.get("value", {}).get("choices") or []
            if picked and picked[0] in CHOICES:
                return picked[0]
    return None
