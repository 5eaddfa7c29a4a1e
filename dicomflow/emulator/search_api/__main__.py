from dicomflow.emulator.search_api.server import main

main()
