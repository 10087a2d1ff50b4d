"""The clinical questions the load benches ask (bench/load.py, bench/embedded_load.py): one list,
so both benches put the same questions to the model."""

QUESTIONS = [
    "Does low-dose aspirin prevent recurrent ischemic stroke?",
    "Is metformin safe in chronic kidney disease stage 3?",
    "Does vitamin D supplementation reduce hip fractures in older adults?",
    "Do statins cause muscle pain?",
    "Does early mobilisation after hip fracture surgery improve recovery?",
    "What is the bleeding risk of dual antiplatelet therapy after minor stroke?",
    "Should metformin be stopped before contrast imaging?",
    "Does calcium with vitamin D prevent fractures?",
    "Are statins useful for primary prevention in people over 75?",
    "How soon after hip fracture should surgery happen?",
    "Are SGLT2 inhibitors beneficial in heart failure with preserved ejection fraction?",
    "Does influenza vaccination reduce cardiovascular events?",
]
