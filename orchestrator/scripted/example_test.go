package scripted_test

import (
	"context"
	"fmt"
	"log"

	"github.com/m1-agent/m1/orchestrator"
	"github.com/m1-agent/m1/orchestrator/scripted"
)

func Example() {
	p, err := scripted.Parse([]byte(`
steps:
  - text: "Look first."
    calls:
      - tool: list_dir
        args: {path: "."}
  - calls:
      - tool: write_file
        args: {path: notes.txt, content: "hello"}
        reasoning: "Record the finding."
`))
	if err != nil {
		log.Fatal(err)
	}
	s := orchestrator.Session{Goal: "Take notes.", Tools: []orchestrator.Tool{{Name: "list_dir"}, {Name: "write_file"}}}
	for {
		step, err := p.Next(context.Background(), s)
		if err != nil {
			log.Fatal(err)
		}
		for _, c := range step.Calls {
			fmt.Println(c.ID, c.Tool, string(c.Args))
		}
		if step.Done {
			break
		}
		s.History = append(s.History, orchestrator.StepRecord{Text: step.Text, Calls: step.Calls})
	}
	// Output:
	// call_1_1 list_dir {"path":"."}
	// call_2_1 write_file {"path":"notes.txt","content":"hello"}
}
