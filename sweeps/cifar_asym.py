"""The flagship sweep: DivideMix on CIFAR-10 with 40% asymmetric label noise.

Preset cifar10-asym-0.4 (the paper's recipe: PreAct ResNet-18, 301 epochs, 10 warmup epochs with
the confidence penalty, lambda_u 0). Searches lambda_u in [0, 150], T in [0.2, 1.0] and
p_threshold in [0.3, 0.9] with Optuna TPE (the paper's values first), ASHA early stopping on the
noisy-validation accuracy, every trial checkpointed and tracked in MLflow.

    python sweeps/cifar_asym.py --smoke-test --data-dir /tmp/cifar10
    python sweeps/cifar_asym.py --num-samples 32 --gpus-per-trial 0.5 --max-concurrent 8
    # on a cluster's head node; HEAD_IP = the head's private address (`ray start --head` prints
    # it): trials log to MLflow from every node, where 127.0.0.1 would be that node itself
    python sweeps/cifar_asym.py --address auto --data-dir /shared/data \
        --storage-path /shared/ray_results --mlflow-uri http://HEAD_IP:5000
    python sweeps/cifar_asym.py --resume --name NAME

See docs/sweeps.md.
"""

from dmx.cli.sweep import main

PRESET = "cifar10-asym-0.4"

if __name__ == "__main__":
    raise SystemExit(main(PRESET, description=__doc__))
