import pytest
import torch
from sklearn.datasets import load_sample_image
from PIL import Image

from finetuner.data.preprocess import eval_view
from finetuner.models import WeightsError, build_model, get_arch
from finetuner.training.freeze import set_frozen_prefix, train_mode

ARCHS = ["tf_efficientnet_lite0", "resnet18", "mobilenet_v3_small", "convnext_tiny",
         "densenet121", "regnet_y_400mf", "efficientnet_b0"]


def _base_head(base):
    for name in ("classifier", "fc"):
        head = getattr(base, name, None)
        if isinstance(head, torch.nn.Linear):
            return head
    return base.classifier[-1]


@pytest.mark.parametrize("arch", ARCHS)
def test_staged_model_computes_what_the_original_computes(arch):
    spec = get_arch(arch)
    torch.manual_seed(0)
    base = spec.build_base().eval()
    model = build_model(arch, "none", 1000).eval()
    model.stages.load_state_dict(torch.nn.ModuleList(spec.cut(base).stages).state_dict())
    model.classifier.load_state_dict(_base_head(base).state_dict())
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(model(x), base((x - model.mean) / model.std), atol=1e-4)


@pytest.mark.parametrize("arch, classes", [("resnet18", 3), ("tf_efficientnet_lite0", 7)])
def test_head_is_replaced_for_the_number_of_classes(arch, classes):
    model = build_model(arch, "none", classes)
    assert model.classifier.out_features == classes
    assert model(torch.rand(2, 3, 32, 32)).shape == (2, classes)


@pytest.mark.parametrize("depth", [0, 1, 3, 5])
def test_freezing_trains_exactly_the_later_stages_and_head(depth):
    model = build_model("resnet18", "none", 2)
    set_frozen_prefix(model, depth)
    for index, stage in enumerate(model.stages):
        assert all(p.requires_grad == (index >= depth) for p in stage.parameters())
    assert all(p.requires_grad for p in model.classifier.parameters())
    train_mode(model, depth)
    for index, stage in enumerate(model.stages):
        norms = [m for m in stage.modules() if isinstance(m, torch.nn.BatchNorm2d)]
        assert norms and all(m.training == (index >= depth) for m in norms)


def test_frozen_batchnorm_statistics_do_not_drift():
    model = build_model("resnet18", "none", 2)
    set_frozen_prefix(model, 2)
    train_mode(model, 2)
    before = model.stages[1][0].bn1.running_mean.clone()
    trained_before = model.stages[3][0].bn1.running_mean.clone()
    model(torch.rand(4, 3, 32, 32))
    assert torch.equal(model.stages[1][0].bn1.running_mean, before)
    assert not torch.equal(model.stages[3][0].bn1.running_mean, trained_before)


def _top1(model, name, size):
    image = Image.fromarray(load_sample_image(name))
    view = torch.from_numpy(__import__("numpy").asarray(eval_view(image, size, 0.875)).copy())
    with torch.no_grad():
        return model.eval()(view.permute(2, 0, 1)[None]).argmax(1).item()


def test_offline_default_weights_are_real_imagenet_weights():
    model = build_model("tf_efficientnet_lite0", "DEFAULT", 1000)
    # the new head is random: put the packaged ImageNet classifier back to check the backbone
    spec = get_arch("tf_efficientnet_lite0")
    base = spec.build_base()
    spec.load_named_weights(base, "DEFAULT")
    model.classifier.load_state_dict(base.classifier.state_dict())
    assert _top1(model, "flower.jpg", 224) == 985  # daisy


def test_weights_from_a_local_state_dict_file(tmp_path):
    spec = get_arch("resnet18")
    torch.manual_seed(1)
    base = spec.build_base()
    path = tmp_path / "resnet18.pt"
    torch.save(base.state_dict(), path)
    model = build_model("resnet18", str(path), 4)
    assert torch.equal(model.stages[1][0].conv1.weight, base.layer1[0].conv1.weight)


def test_weights_of_another_architecture_are_refused(tmp_path):
    path = tmp_path / "other.pt"
    torch.save(get_arch("resnet18").build_base().state_dict(), path)
    with pytest.raises(WeightsError, match="does not fit resnet34"):
        build_model("resnet34", str(path), 2)


def test_unknown_weights_name_lists_the_valid_ones():
    with pytest.raises(WeightsError, match="IMAGENET1K_V1"):
        build_model("resnet18", "IMAGENET_V9", 2)


def test_unreachable_torchvision_weights_say_which_file_to_put_where(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))

    def offline(*args, **kwargs):
        raise OSError("network is unreachable")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", offline)
    with pytest.raises(WeightsError) as error:
        build_model("resnet18", "IMAGENET1K_V1", 2)
    message = str(error.value)
    assert "resnet18-f37072fd.pth" in message
    assert str(tmp_path / "hub" / "checkpoints") in message


@pytest.mark.parametrize("index, size", [(0, 224), (1, 240), (2, 260)])
def test_each_offline_lite_model_sees_a_palace_in_china_jpg(index, size):
    arch = f"tf_efficientnet_lite{index}"
    spec = get_arch(arch)
    assert spec.input_size == size and spec.mean == (0.5, 0.5, 0.5) and spec.std == (0.5, 0.5, 0.5)
    base = spec.build_base()
    spec.load_named_weights(base, "DEFAULT")  # copies in order, checking every shape
    model = build_model(arch, "DEFAULT", 1000)
    model.classifier.load_state_dict(base.classifier.state_dict())
    assert _top1(model, "china.jpg", size) == 698  # palace


def test_lite_weights_with_a_wrong_shape_are_refused(tmp_path, monkeypatch):
    from finetuner.models import registry
    spec = get_arch("tf_efficientnet_lite0")
    state = torch.load(registry._lite_file(0), weights_only=True)
    first = next(iter(state))
    state[first] = torch.zeros(1, 2, 3)
    bad = tmp_path / "bad.pth"
    torch.save(state, bad)
    monkeypatch.setattr(registry, "_lite_file", lambda index: bad)
    with pytest.raises(WeightsError, match="shape"):
        spec.load_named_weights(spec.build_base(), "DEFAULT")
