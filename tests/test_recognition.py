"""Recognition as the STAN recipe runs it: class names written as the prompt lists write them (read
from the official UCF-101 and HMDB-51 class files), and the class-name text features kept fixed
unless model.classifier=text_trainable."""

import torch
from gradients import assert_gradients_are_derivatives

from mugstan.config import DataConfig, ModelConfig, STANConfig
from mugstan.data.datasets.formats import hmdb51, ucf101
from mugstan.engine.optim import param_groups
from mugstan.models import build_model, class_prompts, prompt_name

# ucfTrainTestlist/classInd.txt of UCF101TrainTestSplits-RecognitionTask.zip ("1 ApplyEyeMakeup" ... "101 YoYo")
UCF101_CLASSES = """ApplyEyeMakeup ApplyLipstick Archery BabyCrawling BalanceBeam BandMarching BaseballPitch Basketball
BasketballDunk BenchPress Biking Billiards BlowDryHair BlowingCandles BodyWeightSquats Bowling BoxingPunchingBag
BoxingSpeedBag BreastStroke BrushingTeeth CleanAndJerk CliffDiving CricketBowling CricketShot CuttingInKitchen Diving
Drumming Fencing FieldHockeyPenalty FloorGymnastics FrisbeeCatch FrontCrawl GolfSwing Haircut Hammering HammerThrow
HandstandPushups HandstandWalking HeadMassage HighJump HorseRace HorseRiding HulaHoop IceDancing JavelinThrow
JugglingBalls JumpingJack JumpRope Kayaking Knitting LongJump Lunges MilitaryParade Mixing MoppingFloor Nunchucks
ParallelBars PizzaTossing PlayingCello PlayingDaf PlayingDhol PlayingFlute PlayingGuitar PlayingPiano PlayingSitar
PlayingTabla PlayingViolin PoleVault PommelHorse PullUps Punch PushUps Rafting RockClimbingIndoor RopeClimbing Rowing
SalsaSpin ShavingBeard Shotput SkateBoarding Skiing Skijet SkyDiving SoccerJuggling SoccerPenalty StillRings
SumoWrestling Surfing Swing TableTennisShot TaiChi TennisSwing ThrowDiscus TrampolineJumping Typing UnevenBars
VolleyballSpiking WalkingWithDog WallPushups WritingOnBoard YoYo""".split()

# The 51 classes of testTrainMulti_7030_splits/ (<class>_test_split1.txt), in the order of the STAN
# authors' configs/lists/hmdb51_labels.txt, which writes them with spaces.
HMDB51_CLASSES = """brush_hair cartwheel catch chew clap climb climb_stairs dive draw_sword dribble drink eat fall_floor
fencing flic_flac golf handstand hit hug jump kick_ball kick kiss laugh pick pour pullup punch push pushup ride_bike
ride_horse run shake_hands shoot_ball shoot_bow shoot_gun sit situp smile smoke somersault stand swing_baseball
sword_exercise sword talk throw turn walk wave""".split()
HMDB51_AUTHORS = """
brush hair|cartwheel|catch|chew|clap|climb|climb stairs|dive|draw sword|dribble|drink|eat|fall floor|
fencing|flic flac|golf|handstand|hit|hug|jump|kick ball|kick|kiss|laugh|pick|pour|pullup|punch|push|pushup|ride bike|
ride horse|run|shake hands|shoot ball|shoot bow|shoot gun|sit|situp|smile|smoke|somersault|stand|swing baseball|
sword exercise|sword|talk|throw|turn|walk|wave""".replace("\n", "").split("|")


def test_official_class_files_give_the_prompt_lists_names(tmp_path):
    lists = tmp_path / "ucfTrainTestlist"
    lists.mkdir()
    (lists / "classInd.txt").write_text("".join(f"{i} {n}\r\n" for i, n in enumerate(UCF101_CLASSES, 1)))
    (lists / "testlist01.txt").write_text("".join(f"{n}/v_{n}_g01_c01.avi\r\n" for n in UCF101_CLASSES))
    splits = tmp_path / "testTrainMulti_7030_splits"
    splits.mkdir()
    for n in HMDB51_CLASSES:
        (splits / f"{n}_test_split1.txt").write_text(f"{n}_1.avi 2 \n{n}_2.avi 1 \n")

    ucf = ucf101(
        DataConfig(
            dataset="ucf101",
            root=str(tmp_path),
            videos="UCF-101",
            test_ann=str(lists / "testlist01.txt"),
            extra={"class_names": str(lists / "classInd.txt")},
        ),
        "test",
    ).class_names
    hmdb = hmdb51(
        DataConfig(
            dataset="hmdb51", root=str(tmp_path), videos="hmdb51", test_ann=str(splits / "brush_hair_test_split1.txt")
        ),
        "test",
    ).class_names
    assert len(ucf) == 101 and len(hmdb) == 51

    words = [prompt_name(n) for n in ucf]
    assert words[:3] == ["apply eye makeup", "apply lipstick", "archery"] and words[-1] == "yo yo"
    assert words[ucf.index("CleanAndJerk")] == "clean and jerk" and words[ucf.index("PlayingDaf")] == "playing daf"
    for name, phrase in zip(ucf, words, strict=True):  # lower-case words, one space apart, that spell the name again
        assert phrase == phrase.lower() and phrase == " ".join(phrase.split()), phrase
        assert "".join(w.capitalize() for w in phrase.split()) == name, (name, phrase)

    assert sorted(hmdb) == sorted(HMDB51_CLASSES)
    assert [prompt_name(n) for n in HMDB51_CLASSES] == HMDB51_AUTHORS


def test_zero_shot_and_classifier_prompts_write_the_names_as_words():
    """class_prompts: what zero-shot evaluation and the text classifier both read."""
    assert class_prompts(["ApplyEyeMakeup", "brush_hair"], ["a video of a person {}.", "{}"]) == [
        ["a video of a person apply eye makeup.", "a video of a person brush hair."],
        ["apply eye makeup", "brush hair"],
    ]


def test_names_with_spaces_are_kept():
    assert prompt_name("air drumming") == "air drumming"  # Kinetics-400
    assert prompt_name("Approaching something with your camera") == "Approaching something with your camera"  # SSv2
    assert prompt_name("moving left") == "moving left"  # the synthetic demo
    assert prompt_name("abseiling") == "abseiling"


def tiny_recognition(classifier: str):
    torch.manual_seed(0)
    cfg = ModelConfig(
        backbone="mugstan-tiny",
        branch="stan",
        head="mean",
        stan=STANConfig(depth=2),
        task="recognition",
        classifier=classifier,
        prompt_templates=["{}"],
        context_length=16,
    )
    return build_model(cfg, class_names=["ApplyEyeMakeup", "brush_hair", "YoYo"])


def test_text_classifier_keeps_the_class_name_features_fixed():
    """model.classifier=text (the STAN recipe): the class vectors are the text tower's features of the
    bare class names, computed once under no_grad; training leaves them as they are."""
    model = tiny_recognition("text")
    encoder = model.encoder
    ids, mask = encoder.tokenize(["apply eye makeup", "brush hair", "yo yo"])
    with torch.no_grad():
        expected = torch.nn.functional.normalize(
            encoder.head.text_vector(encoder.backbone.encode_text(ids, mask)), dim=-1
        )
    torch.testing.assert_close(model.classifier.weight, expected)
    assert not model.classifier.weight.requires_grad
    assert all(p is not model.classifier.weight for g in param_groups(model) for p in g["params"])

    frames, mask, labels = torch.randn(2, 4, 3, 32, 32), torch.ones(2, 4, dtype=torch.bool), torch.tensor([0, 2])
    torch.nn.functional.cross_entropy(model(frames, mask)["logits"], labels).backward()
    assert model.classifier.weight.grad is None
    # the branch learns: its gradient is the loss's derivative (finite differences)
    assert_gradients_are_derivatives(
        model,
        lambda m: torch.nn.functional.cross_entropy(m(frames.double(), mask)["logits"], labels),
        ["encoder.branch.time_embed.weight"],
    )


def test_text_trainable_classifier_trains_its_class_vectors():
    frozen, trainable = tiny_recognition("text"), tiny_recognition("text_trainable")
    torch.testing.assert_close(trainable.classifier.weight, frozen.classifier.weight)  # the same start
    assert trainable.classifier.weight.requires_grad
    assert any(p is trainable.classifier.weight for g in param_groups(trainable) for p in g["params"])
    frames, mask, labels = torch.randn(2, 4, 3, 32, 32), torch.ones(2, 4, dtype=torch.bool), torch.tensor([0, 2])
    torch.nn.functional.cross_entropy(trainable(frames, mask)["logits"], labels).backward()
    assert_gradients_are_derivatives(  # the class vectors' gradient is the loss's derivative (finite differences)
        trainable,
        lambda m: torch.nn.functional.cross_entropy(m(frames.double(), mask)["logits"], labels),
        ["classifier.weight"],
    )
