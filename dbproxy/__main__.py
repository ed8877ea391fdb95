from dbproxy.cli import main

raise SystemExit(main())
