"""The method: LoRA layers (lora), the model and tokenizer (modeling, tiny_model), the functional core of equations
1-3 (regrad), tasks as token batches (task_batches), batched decoding and answer NLL (generation), the learner
(model + phi + alpha: learner) and PEFT adapters in and out (adapters)."""
