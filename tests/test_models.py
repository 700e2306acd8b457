import pytest
import torch
from sklearn.datasets import load_sample_image
from PIL import Image

from finetuner.data.views import eval_view
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
    model.classifier.load_state_dict(_base_head(base).state_dict())  # before cut() resets it
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        expected = base((x - model.mean) / model.std)
    model.stages.load_state_dict(torch.nn.ModuleList(spec.cut(base).stages).state_dict())
    with torch.no_grad():
        assert torch.allclose(model(x), expected, atol=1e-4)


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
    from finetuner.models import timm_archs
    spec = get_arch("tf_efficientnet_lite0")
    state = torch.load(timm_archs._packaged_file("tf_efficientnet_lite0"), weights_only=True)
    first = next(iter(state))
    state[first] = torch.zeros(1, 2, 3)
    bad = tmp_path / "bad.pth"
    torch.save(state, bad)
    monkeypatch.setattr(timm_archs, "_packaged_file", lambda name: bad)
    with pytest.raises(WeightsError, match="shape"):
        spec.load_named_weights(spec.build_base(), "DEFAULT")


# --- timm families: stages from timm's feature_info ---------------------------------------------

TIMM_FAMILIES = {  # one architecture per family the issue names, by timm's own names
    "resnet50d": ("resnet", ("act1", "layer1", "layer2", "layer3", "layer4")),
    "mobilenetv4_conv_small": ("mobilenet", ("bn1", "blocks.0", "blocks.1", "blocks.2", "blocks.4")),
    "mobilenetv3_small_100": ("mobilenet", ("bn1", "blocks.0", "blocks.1", "blocks.3", "blocks.5")),
    "convnextv2_atto": ("convnext", ("stages.0", "stages.1", "stages.2", "stages.3")),
    "efficientnetv2_rw_s": ("efficientnet", ("blocks.0", "blocks.1", "blocks.2", "blocks.4", "blocks.5")),
    "regnety_002": ("regnet", ("stem", "s1", "s2", "s3", "s4")),
    "tf_efficientnet_lite0": ("efficientnet", ("blocks.0", "blocks.1", "blocks.2", "blocks.4", "blocks.6")),
}


@pytest.mark.parametrize("arch", TIMM_FAMILIES)
def test_timm_family_is_cut_at_its_feature_info(arch):
    import timm
    family, stages = TIMM_FAMILIES[arch]
    spec = get_arch(arch)
    assert (spec.source, spec.family, spec.stage_names) == ("timm", family, stages)
    with torch.device("meta"):
        reference = timm.create_model(arch)
    assert spec.stage_names == tuple(info["module"] for info in reference.feature_info)

    torch.manual_seed(0)
    base = spec.build_base().eval()
    model = build_model(arch, "none", 3).eval()
    parts = spec.cut(base)  # shares base's modules: copy them into the model
    model.stages.load_state_dict(torch.nn.ModuleList(parts.stages).state_dict())
    model.pool.load_state_dict(parts.pool.state_dict())
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        whole = model(x)
        features = model.pool(model.forward_stages(model.normalize(x)))
        # timm's own pre-logits features of the same input
        expected = base.forward_head(base.forward_features(model.normalize(x)), pre_logits=True)
        assert torch.allclose(features, expected, atol=1e-5)
        for depth in range(model.num_stages + 1):
            assert torch.allclose(model.forward_trainable(model.forward_frozen(x, depth), depth),
                                  whole, atol=1e-5), depth


def test_timm_names_and_families_are_listed_and_torchvision_wins_a_shared_name():
    from finetuner.models import archs_by_family, list_archs
    grouped = archs_by_family()
    for arch, (family, _) in TIMM_FAMILIES.items():
        assert arch in grouped[("timm", family)]
    assert get_arch("resnet50").source == "torchvision"  # timm has a resnet50 too
    assert len(set(list_archs())) == len(list_archs())


def test_timm_weights_names_are_its_pretrained_tags():
    spec = get_arch("resnet50d")
    assert spec.weight_names[0] == "DEFAULT" and "ra2_in1k" in spec.weight_names
    assert (spec.input_size, spec.crop_pct, spec.mean) == (224, 0.875, (0.485, 0.456, 0.406))
    with pytest.raises(WeightsError, match="Did you mean: ra2_in1k"):
        build_model("resnet50d", "ra2_in1", 2)


def _hub_cache_with(root, repo, state):
    """A Hugging Face cache holding ``repo``'s model.safetensors (the layout huggingface_hub
    writes: refs/main names the snapshot)."""
    from safetensors.torch import save_file
    folder = root / f"models--{repo.replace('/', '--')}"
    snapshot = folder / "snapshots" / "0123abcd"
    snapshot.mkdir(parents=True)
    (folder / "refs").mkdir()
    (folder / "refs" / "main").write_text("0123abcd")
    save_file({k: v.contiguous() for k, v in state.items()}, snapshot / "model.safetensors")
    return snapshot / "model.safetensors"


def test_timm_tag_weights_come_from_the_hugging_face_cache(tmp_path, monkeypatch):
    from huggingface_hub import constants
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))
    spec = get_arch("regnety_002")
    torch.manual_seed(3)
    state = spec.build_base().state_dict()
    path = _hub_cache_with(tmp_path, "timm/regnety_002.pycls_in1k", state)
    assert spec.local_weights("DEFAULT") == path
    model = build_model("regnety_002", "pycls_in1k", 2)
    assert torch.equal(model.stages[0][0].conv.weight, state["stem.conv.weight"])
    assert torch.equal(model.stages[4][0].b1.conv1.conv.weight, state["s4.b1.conv1.conv.weight"])


def test_timm_weights_not_cached_offline_say_which_file_to_put_where(tmp_path, monkeypatch):
    import huggingface_hub
    from huggingface_hub import constants
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))

    def offline(*args, **kwargs):
        raise OSError("network is unreachable")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", offline)
    with pytest.raises(WeightsError) as error:
        build_model("resnet50d", "ra2_in1k", 2)
    message = str(error.value)
    assert str(tmp_path / "models--timm--resnet50d.ra2_in1k") in message
    assert "model.safetensors" in message and "huggingface-cli download timm/resnet50d.ra2_in1k" in message


def test_a_probe_on_every_layer_reads_each_stages_average_and_the_last_pool():
    torch.manual_seed(0)
    model = build_model("resnet18", "none", 4, "all").eval()
    images = torch.randint(0, 255, (3, 3, 48, 48), dtype=torch.uint8)
    with torch.no_grad():
        x, taps = model.normalize(images), []
        for stage in model.stages:
            x = stage(x)
            taps.append(x.mean((2, 3)))
        features = torch.cat(taps[:-1] + [model.pool(x)], 1)
        assert model.classifier.in_features == features.shape[1] == 64 + 64 + 128 + 256 + 512
        assert torch.allclose(model.forward_frozen(images, model.num_stages), features)
        assert torch.allclose(model(images), model.classifier(features))
        # probe.layers: auto may weigh only the last stage's pool: the last pooled_width columns
        assert model.pooled_width == 512 == build_model("resnet18", "none", 4).pooled_width
        assert torch.equal(features[:, -model.pooled_width:], model.pool(x))
    with pytest.raises(ValueError, match="only be trained as a probe"):
        model.forward_frozen(images, 2)  # no fine-tune from a frozen prefix: taps would be lost


def test_an_ensemble_averages_its_members_probabilities():
    from finetuner.models import ProbeEnsemble, input_spec, member_names
    torch.manual_seed(0)
    ensemble = build_model("resnet18+mobilenet_v3_small", "none", 3, "all").eval()
    assert isinstance(ensemble, ProbeEnsemble) and len(ensemble.members) == 2
    assert member_names("resnet18+mobilenet_v3_small") == ["resnet18", "mobilenet_v3_small"]
    images = torch.randint(0, 255, (4, 3, 48, 48), dtype=torch.uint8)
    with torch.no_grad():
        mean = torch.stack([m(images).softmax(1) for m in ensemble.members]).mean(0)
        assert torch.allclose(ensemble(images).softmax(1), mean, atol=1e-6)
        assert torch.allclose(ensemble(images).exp().sum(1), torch.ones(4), atol=1e-5)
    # one input for all: the largest native size among the members, with its crop
    spec = input_spec("tf_efficientnet_lite0+tf_efficientnet_lite2")
    assert (spec.size, spec.crop_pct) == (get_arch("tf_efficientnet_lite2").input_size,
                                          get_arch("tf_efficientnet_lite2").crop_pct)
