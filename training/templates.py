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

# Beyond the paper: answers that name what they segment (so the reply text is learned as well as the mask), the
# questions users type without the mask request, and follow-up turns of a conversation.
NAMED_ANSWERS = (
    "It is the {class_name} [SEG].",
    "Sure, it is the {class_name} [SEG].",
    "Sure, the {class_name} [SEG].",
)
PLAIN_NAME_QUESTIONS = (
    "Where is the {class_name}?",
    "Can you show me the {class_name}?",
)
FOLLOWUP_NAME_QUESTIONS = (
    "And the {class_name}?",
    "What about the {class_name}?",
)
FOLLOWUP_USE_PREFIX = "And "
