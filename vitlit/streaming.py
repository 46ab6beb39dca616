"""``python -m vitlit.streaming optimize <image folder> <output dir>``: an image folder -> LitData shards.

Forwards to :mod:`vitlit.data.shards`; train from the shards with ``python train.py data=streaming
data.input_dir=<output dir>`` (docs/streaming.md).
"""

from vitlit.data.shards import main

if __name__ == "__main__":
    main()
