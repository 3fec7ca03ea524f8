"""Question and answer templates of the paper's training recipe (the reference's ``utils/utils.py`` lists)."""

SHORT_QUESTIONS = (
    "Can you segment the {class_name} in this image?",
    "Please segment the {class_name} in this image.",
    "What is {class_name} in this image? Please respond with segmentation mask.",
    "What is {class_name} in this image? Please output segmentation mask.",
)
LONG_QUESTIONS = (
    "{sent} Please respond with segmentation mask.",
    "{sent} Please output segmentation mask.",
)
EXPLANATORY_QUESTIONS = (
    "Please output segmentation mask and explain why.",
    "Please output segmentation mask and explain the reason.",
    "Please output segmentation mask and give some explanation.",
)
ANSWERS = (
    "It is [SEG].",
    "Sure, [SEG].",
    "Sure, it is [SEG].",
    "Sure, the segmentation result is [SEG].",
    "[SEG].",
)
