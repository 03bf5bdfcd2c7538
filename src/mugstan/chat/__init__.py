"""Video chat: mugstan's video encoder as the eyes of a LLaVA language model (docs/chat.md).

- ``model.py``: ``VideoChatModel`` and ``build_chat_model`` (``model.task: chat`` in ``build_model``);
- ``tower.py``: LLaVA's CLIP tower as a mugstan backbone, cut at the projector's layer;
- ``prompt.py``: conversations -> token ids with the video's placeholders;
- ``qa.py``: Video QA evaluation (exact match, the answer file of LLM-judge scripts);
- ``cli.py``: ``mugstan chat VIDEO [QUESTION]``;
- ``tiny.py``: a tiny random LLaVA checkpoint written offline.
"""
