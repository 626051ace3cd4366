"""The browser test's comparison of a run with the stored notebook follows nbval's rules (tests/stored_outputs.py)."""

import copy
import json

import nbformat
from browser_checks import REPO
from stored_outputs import differences


def notebook(*cells):
    nb = nbformat.v4.new_notebook()
    nb.cells = list(cells)
    return json.loads(nbformat.writes(nb))


def printed(text, tags=()):
    return nbformat.v4.new_code_cell("print(...)", metadata={"tags": list(tags)} if tags else {},
                                     outputs=[nbformat.v4.new_output("stream", name="stdout", text=text)])


def test_same_outputs_pass_and_a_changed_number_fails():
    stored = notebook(nbformat.v4.new_markdown_cell("# title"), printed("loss 0.125\n"))
    assert differences(stored, copy.deepcopy(stored)) == []
    run = copy.deepcopy(stored)
    run["cells"][1]["outputs"][0]["text"] = "loss 0.126\n"
    assert differences(stored, run) == [
        "cell 1: stdout differs from the stored output: stored 'loss 0.125\\n', run 'loss 0.126\\n'"]


def test_ignored_cells_streams_and_images_as_nbval():
    stored = notebook(printed("12:03:01\n", tags=["nbval-ignore-output"]), printed("a\nb\n"))
    stored["cells"][1]["outputs"].append(nbformat.v4.new_output("display_data", data={"image/png": "AAAA"}))
    run = copy.deepcopy(stored)
    run["cells"][0]["outputs"][0]["text"] = "12:04:59\n"  # tagged: not compared
    run["cells"][1]["outputs"] = [  # the same text in two stream messages, one overwritten by \r; another picture
        nbformat.v4.new_output("stream", name="stdout", text="a\nxx\rb"),
        nbformat.v4.new_output("stream", name="stdout", text="\n"),
        nbformat.v4.new_output("display_data", data={"image/png": "BBBB"})]
    assert differences(stored, run) == []


def test_a_missing_or_extra_output_fails():
    stored = notebook(printed("x\n"))
    run = copy.deepcopy(stored)
    run["cells"][0]["outputs"].append(nbformat.v4.new_output("execute_result", data={"text/plain": "1"}))
    assert differences(stored, run) == ["cell 0: outputs ['stdout', 'text/plain'] where the stored notebook has "
                                        "['stdout']"]
    run["cells"][0]["outputs"] = []
    assert differences(stored, run) == ["cell 0: outputs [] where the stored notebook has ['stdout']"]


def test_a_lecture_against_itself_and_with_one_result_changed():
    stored = json.loads((REPO / "lectures" / "00_text_to_2d.ipynb").read_text())
    assert differences(stored, copy.deepcopy(stored)) == []
    index, cell = next((i, c) for i, c in enumerate(stored["cells"]) if c["cell_type"] == "code" and c["outputs"]
                       and "nbval-ignore-output" not in c["metadata"].get("tags", []))
    run = copy.deepcopy(stored)
    run["cells"][index]["outputs"] = [nbformat.v4.new_output("stream", name="stdout", text="something else\n")]
    assert differences(stored, run)[0].startswith(f"cell {index}: ")
