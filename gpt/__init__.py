"""gpt: distributed GPT pretraining and fine-tuning.

Imports go one way: config -> data / model -> parallel engine -> trainer -> entry points.
"""

__version__ = "0.1.0"
