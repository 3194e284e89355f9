"""The federation on NVIDIA FLARE: the project's clients, privacy filters, audit and capture inside NVFlare.

``job`` builds the FedAvg job from a train.py config and runs it in NVFlare's simulator or exports it;
the site's training script is ``flare_site.py`` at the project root (Lightning under ``flare.patch``); ``outbox_filter``
is the task-result filter that runs the project's outbox (privacy filters, writer, audit) on the
DIFF NVFlare sends; ``model`` is the server's copy of the model. docs/nvflare.md says how to run it.
"""
