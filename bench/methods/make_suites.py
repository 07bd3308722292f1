#!/usr/bin/env python3
"""Writes plugins/*/benches/methods.toml: the methods table's suites (one per builtin classification domain).

Every suite runs the same teacher and student with each method, at its authors' default weights (the
combination with cross-entropy their reference code uses: Hinton KD and DKD as in mdistiller, DIST and logit
standardisation as their authors' CIFAR-100 settings, the feature methods as RepDistiller's train_student.py:
CE weight 1 plus beta * the feature loss), 3 seeds, and the same runs with the student trained on 10 % of the
training split (`student.train_fraction = 0.1`; the teacher still learns from all of it), where soft targets
matter most. Nothing here is tuned; a method that needs a feature the domain's networks do not have (maps for
AT, NST and ReviewKD, pre-ReLU taps for OFD) is left out of that domain and shows as "n/a" in the table.

Run names are `methods-<domain>-<method>` and `methods-<domain>-<method>-low`; the methods table in the bench
report reads them. Regenerate after changing this file:

    python3 bench/methods/make_suites.py
"""

import os

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def loss(name, weight, **kw):
    parts = [f'name = "{name}"'] + [f"{k} = {v!r}".replace("'", '"') for k, v in kw.items()] + [f"weight = {weight:g}"]
    return "{ " + ", ".join(parts) + " }"


def methods(task, pairs):
    """The method rows: name -> loss list. `pairs` maps a feature role to (student, teacher) feature names."""
    vec, maps = pairs.get("vector"), pairs.get("map")
    rows = {
        "kd": [loss("kd", 0.9, temperature=4.0), loss(task, 0.1)],
        "dkd": [loss(task, 1.0), loss("dkd", 1.0, alpha=1.0, beta=8.0, temperature=4.0)],
        "dist": [loss(task, 1.0), loss("dist", 1.0, beta=2.0, gamma=2.0, temperature=4.0)],
        "ls_kd": [loss(task, 0.1), loss("ls_kd", 9.0, temperature=2.0)],
    }
    if vec:
        s, t = vec
        rows["pkt"] = [loss(task, 1.0), loss("pkt", 30000.0, student_feature=s, teacher_feature=t)]
        rows["sp"] = [loss(task, 1.0), loss("sp", 3000.0, student_feature=s, teacher_feature=t)]
        rows["rkd"] = [loss(task, 1.0), loss("rkd", 1.0, student_feature=s, teacher_feature=t)]
        rows["crd"] = [loss(task, 1.0), loss("crd", 0.8, student_feature=s, teacher_feature=t)]
    hint = maps or pairs.get("hint")
    if hint:
        s, t = hint
        rows["hint"] = [loss(task, 1.0), loss("hint", 100.0, student_feature=s, teacher_feature=t)]
        rows["vid"] = [loss(task, 1.0), loss("vid", 1.0, student_feature=s, teacher_feature=t)]
    pre = pairs.get("pre")
    if pre:
        # OFD on pre-ReLU taps, weight 1e-3: the authors' CIFAR training loop divides the per-sample sum by 1000
        s, t = pre
        rows["ofd"] = [loss(task, 1.0), loss("ofd", 0.001, student_feature=s, teacher_feature=t)]
    review = pairs.get("review")
    if review:
        # ReviewKD on the student's last stages against the teacher's stages, weight 1 (mdistiller's default)
        s, t = review
        rows["reviewkd"] = [loss(task, 1.0), loss("reviewkd", 1.0, student_features=s, teacher_features=t)]
    if maps:
        s, t = maps
        rows["at"] = [loss(task, 1.0), loss("at", 1000.0, student_feature=s, teacher_feature=t)]
        rows["nst"] = [loss(task, 1.0), loss("nst", 50.0, student_feature=s, teacher_feature=t)]
    return rows


# student settings a method needs: OFD reads the student's pre-ReLU taps in training (the vision MLP gives
# them in training only on request; the teacher's come with evaluation)
STUDENT_EXTRA = {"ofd": ["model = { pre_activations = true }"]}

DOMAINS = [
    {
        "plugin": "vision",
        "domain": "image",
        "recipe": "../recipes/hinton-mnist.toml",
        "what": "hinton-mnist's 1200-1200 MLP teacher (20 epochs instead of 80) and 800-800 MLP student "
        "(10 epochs instead of 40), to fit 2 cores",
        "overrides": {"teacher": "{ epochs = 20 }", "student": "{ epochs = 10 }"},
        "task": "ce",
        # MLPs have vectors only: no AT or NST
        "pairs": {
            "vector": ("penultimate", "penultimate"),
            "hint": ("penultimate", "penultimate"),
            # the MLPs' pre-ReLU taps, for OFD
            "pre": ("penultimate.pre", "penultimate.pre"),
        },
        "low": True,
        "drop": [],
    },
    {
        "plugin": "audio",
        "domain": "audio",
        "recipe": "../recipes/fsdd-kws.toml",
        "what": "fsdd-kws's res-cnn teacher and DS-CNN student as they are",
        "overrides": {},
        "task": "ce",
        # block2 of the DS-CNN and layer1 of the res-cnn are both 20 x 16 time-frequency maps
        "pairs": {
            "vector": ("penultimate", "penultimate"),
            "map": ("block2", "layer1"),
            # ReviewKD: the DS-CNN's last three blocks fused into the res-cnn's three stages
            "review": (["block2", "block3", "block4"], ["layer1", "layer2", "layer3"]),
        },
        "low": True,
        "drop": [],
    },
    {
        "plugin": "text",
        "domain": "text",
        "recipe": "../recipes/sst2-pkd.toml",
        "what": "sst2-pkd's fine-tuned MiniLM-L6 teacher and 2-layer student (initialised from teacher layers 0 "
        "and 3) as they are",
        "overrides": {},
        "task": "task",
        # NST compares the last layers' token states as channels over positions; hint and VID the same pair
        "pairs": {"vector": ("pooled", "pooled"), "hint": ("hidden.2", "hidden.6")},
        "extra": {"nst": [loss("task", 1.0), loss("nst", 50.0, student_feature="hidden.2", teacher_feature="hidden.6")]},
        "low": True,
        "drop": [],
    },
    {
        "plugin": "graph",
        "domain": "graph",
        "recipe": "../recipes/glnn-cora.toml",
        "what": "glnn-cora's GCN teacher and MLP student (the distilled MLP sees every node, labels only on the "
        "140 training nodes); DKD needs every training sample's label and is left out, and there is no "
        "low-data variant (Cora's 140 labels already are)",
        "overrides": {},
        "task": "task",
        # the GCN's hidden layer is a Nodes feature and the MLP's a Vector: PKT, SP, RKD compare the batch's
        # relations and take both; hint and VID need the same kind and are left out
        "pairs": {"vector": ("hidden1", "hidden1")},
        "low": False,
        "drop": ["dkd"],
    },
]


def main():
    combined = [
        "# The whole methods table in one bench: every run of plugins/{vision,audio,text,graph}/benches/methods.toml",
        "# (generated by bench/methods/make_suites.py; edit that, not this). One report, one table:",
        "#   distill bench --suite bench/methods/all.toml --out runs/methods",
        "seeds = [0, 1, 2]",
        "",
    ]
    for d in DOMAINS:
        rows = methods(d["task"], d["pairs"])
        rows.update(d.get("extra", {}))
        for m in d["drop"]:
            rows.pop(m)
        lines = [
            f"# The methods table's {d['domain']} suite (generated by bench/methods/make_suites.py; edit that, not this).",
            f"# Teacher and student: {d['what']}.",
            "# Each method at its authors' default weights, 3 seeds; the scratch twin and the teacher are the same",
            "# in every run of a seed (with the teacher cache on, the teacher trains once per seed). Runs ending in",
            "# -low train the students on 10 % of the training split. Nothing is chosen on test: the table reads",
            "# each run's paired KD gain on test once, for the record.",
            f"#   distill bench --suite plugins/{d['plugin']}/benches/methods.toml --out runs/methods-{d['domain']}",
            "seeds = [0, 1, 2]",
            "",
        ]
        variants = [("", None)] + ([("-low", "0.1")] if d["low"] else [])
        for suffix, fraction in variants:
            for method in ["recipe"] + list(rows):
                lines += ["[[run]]", f'recipe = "{d["recipe"]}"', "[run.overrides]",
                          f'name = "methods-{d["domain"]}-{method}{suffix}"']
                over = dict(d["overrides"])
                extra = ([f"train_fraction = {fraction}"] if fraction else []) + STUDENT_EXTRA.get(method, [])
                if extra:
                    student = over.get("student", "{ }").strip("{} ")
                    student = ", ".join(([student] if student else []) + extra)
                    over["student"] = "{ " + student + " }"
                for k, v in over.items():
                    lines.append(f"{k} = {v}")
                if method != "recipe":
                    lines.append("distill = { losses = [" + ", ".join(rows[method]) + "] }")
                lines.append("")
        path = os.path.join(ROOT, "plugins", d["plugin"], "benches", "methods.toml")
        with open(path, "w") as f:
            f.write("\n".join(lines))
        print(path, sum(1 for l in lines if l == "[[run]]"), "runs")
        # the same runs, recipe paths relative to bench/methods/
        body = lines[lines.index("seeds = [0, 1, 2]") + 2 :]
        moved = f'recipe = "../../plugins/{d["plugin"]}/recipes/'
        combined += [l.replace('recipe = "../recipes/', moved) for l in body]
    path = os.path.join(ROOT, "bench", "methods", "all.toml")
    with open(path, "w") as f:
        f.write("\n".join(combined))
    print(path, sum(1 for l in combined if l == "[[run]]"), "runs")


if __name__ == "__main__":
    main()
