"""MELD's classes: what the model predicts, in the order of its outputs."""

EMOTIONS = ("neutral", "joy", "surprise", "anger", "sadness", "disgust", "fear")
SENTIMENTS = ("neutral", "positive", "negative")
