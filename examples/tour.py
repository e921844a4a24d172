"""The five-minute tour from the README, runnable: python examples/tour.py [PORT]"""

import sys

from plait import Client, Deployment, DocList, Document, Executor, requests


class Text(Document):
    text: str = ""


class Upper(Executor):
    @requests(on="/upper")
    def upper(self, docs: DocList[Text], **kwargs) -> DocList[Text]:
        for d in docs:
            d.text = d.text.upper()


if __name__ == "__main__":
    port = int(sys.argv[1]) if len(sys.argv) > 1 else 12345
    with Deployment(uses=Upper, port=port, host="127.0.0.1", replicas=2) as dep:
        print(dep.post("/upper", DocList[Text]([Text(text="hi")]), return_type=DocList[Text])[0].text)  # HI

        # Any client can call it: the same code talks to a lone Executor or (soon) a Flow's gateway.
        with Client(host="localhost", port=port) as client:
            many = DocList[Text]([Text(text=f"doc {i}") for i in range(1000)])
            result = client.post("/upper", many, request_size=100, return_type=DocList[Text])
            print(len(result), result[0].text, result[-1].text)  # 1000 DOC 0 DOC 999
