// Renders an Ollama-style TEMPLATE with Go's text/template, the engine Ollama uses.
// Usage: go run main.go TEMPLATE < messages.json
// stdin: a JSON list of messages (the template gets them as .Messages), or a JSON object of the values Ollama's
// legacy path gives a TEMPLATE without .Messages ({"Prompt": …, "System": …}).
package main

import (
	"encoding/json"
	"os"
	"text/template"
)

type Message struct {
	Role    string `json:"role"`
	Content string `json:"content"`
}

func main() {
	tmpl := template.Must(template.New("modelfile").Parse(os.Args[1]))
	var raw json.RawMessage
	if err := json.NewDecoder(os.Stdin).Decode(&raw); err != nil {
		panic(err)
	}
	var data any
	if len(raw) > 0 && raw[0] == '[' {
		var messages []Message
		if err := json.Unmarshal(raw, &messages); err != nil {
			panic(err)
		}
		data = map[string]any{"Messages": messages}
	} else {
		var values map[string]any
		if err := json.Unmarshal(raw, &values); err != nil {
			panic(err)
		}
		data = values
	}
	if err := tmpl.Execute(os.Stdout, data); err != nil {
		panic(err)
	}
}
