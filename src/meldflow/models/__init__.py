"""Models in the offline Hugging Face cache: staging, verification, the tiny Florence-2."""
