"""Reads a directory of TensorBoard event files as TensorBoard itself does and prints JSON.

    python scripts/read_tensorboard.py DIR

Run by tests/track.rs with the project's venv (`make setup` installs tensorboard). It loads DIR with
TensorBoard's own EventAccumulator (tensorboard.backend.event_processing), the reader that applies
TensorBoard's rules for restarts (a SessionLog.START drops what earlier files logged from its step on),
and prints:

    {"scalars": {tag: [[step, value], ...]},      every scalar tag, in the order read
     "text": {tag: [[step, text], ...]},          every string tensor (the text plugin's summaries)
     "plugins": {"scalars": [tags], "text": [tags]},
                                                   the tags TensorBoard's plugins claim, from the
                                                   plugin accumulator its web server uses
     "files": [name, ...]}                        the events files, in the order TensorBoard reads them
"""
import json
import os
import sys

from tensorboard.backend.event_processing import event_accumulator, plugin_event_accumulator


def read(path):
    everything = {event_accumulator.SCALARS: 0, event_accumulator.TENSORS: 0}
    acc = event_accumulator.EventAccumulator(path, size_guidance=everything)
    acc.Reload()
    tags = acc.Tags()
    scalars = {tag: [[e.step, e.value] for e in acc.Scalars(tag)] for tag in tags["scalars"]}
    text = {}
    for tag in tags["tensors"]:
        events = acc.Tensors(tag)
        text[tag] = [[e.step, b"".join(e.tensor_proto.string_val).decode("utf-8")] for e in events]
    plugins = plugin_event_accumulator.EventAccumulator(path, size_guidance={"tensors": 0})
    plugins.Reload()
    claimed = {name: sorted(plugins.PluginTagToContent(name)) if name in plugins.ActivePlugins() else []
               for name in ["scalars", "text"]}
    files = sorted(f for f in os.listdir(path) if "tfevents" in f)
    return {"scalars": scalars, "text": text, "plugins": claimed, "files": files}


if __name__ == "__main__":
    print(json.dumps(read(sys.argv[1])))
